#!/usr/bin/env bash
# Start, stop or list Loopline's services: the Airflow API server, scheduler,
# dag-processor and triggerer, the MLflow tracking server and the model server, plus a
# Celery worker when AIRFLOW__CORE__EXECUTOR is CeleryExecutor (the production profile).
#
#   scripts/services.sh start|stop|status
#
# Every service listens on 127.0.0.1 only. State, logs and pid files live under
# LOOPLINE_HOME (see scripts/env.sh).
#
# Environment:
#   LOOPLINE_START_TIMEOUT  seconds to wait for each service to become ready (default 180)
#   LOOPLINE_SERVICES       space-separated subset of the services to start, stop and list,
#                           for example "airflow-api-server airflow-scheduler
#                           airflow-dag-processor" (default: all of them)
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

RUN_DIR="$LOOPLINE_HOME/run"
LOG_DIR="$LOOPLINE_HOME/logs"
START_TIMEOUT="${LOOPLINE_START_TIMEOUT:-180}"
STOP_TIMEOUT=30

# Start order. MLflow comes first because tasks and the model server log to it.
SERVICES=(mlflow airflow-api-server airflow-scheduler airflow-dag-processor airflow-triggerer)
if [[ "$AIRFLOW__CORE__EXECUTOR" == *CeleryExecutor ]]; then
    SERVICES+=(airflow-celery-worker)
fi
SERVICES+=(model-server)

if [[ -n "${LOOPLINE_SERVICES:-}" ]]; then
    read -r -a _requested <<<"$LOOPLINE_SERVICES"
    for _name in "${_requested[@]}"; do
        if [[ " ${SERVICES[*]} " != *" $_name "* ]]; then
            echo "error: LOOPLINE_SERVICES names unknown service '$_name'; choose from: ${SERVICES[*]}" >&2
            exit 2
        fi
    done
    # Keep the start order of SERVICES.
    _selected=()
    for _name in "${SERVICES[@]}"; do
        if [[ " ${_requested[*]} " == *" $_name "* ]]; then
            _selected+=("$_name")
        fi
    done
    SERVICES=("${_selected[@]}")
    unset _requested _selected _name
fi

AIRFLOW_URL="http://127.0.0.1:$LOOPLINE_AIRFLOW_PORT"
MLFLOW_URL="http://127.0.0.1:$LOOPLINE_MLFLOW_PORT"
MODEL_SERVER_URL="http://127.0.0.1:$LOOPLINE_SERVER_PORT"

# Every process started here, and every child it forks, inherits this variable and runs
# in LOOPLINE_HOME as its working directory. Both let stop find processes whose parent
# has died or whose pid file was lost. The variable alone is not enough: setproctitle,
# which the Airflow API server and the LocalExecutor workers call, overwrites
# /proc/PID/environ.
MARKER="LOOPLINE_SERVICE_HOME=$LOOPLINE_HOME"

# --- Process bookkeeping ---------------------------------------------------------------

# Print field N (1-based, as in proc(5)) of /proc/PID/stat. The command name in field 2
# may contain spaces and parentheses, so the fields are counted after its closing ")".
proc_stat_field() {
    local pid="$1" field="$2" stat rest
    read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
    rest="${stat##*) }"
    local -a fields
    read -r -a fields <<<"$rest"
    printf '%s\n' "${fields[$((field - 3))]}"
}

process_alive() {
    local state
    state="$(proc_stat_field "$1" 3)" || return 1
    [[ "$state" != "Z" && "$state" != "X" ]]
}

# Print the first 160 characters of the command line of PID, or nothing if PID has exited.
process_cmdline() {
    local -a args
    local line
    mapfile -d '' -t args 2>/dev/null <"/proc/$1/cmdline" || return 0
    line="${args[*]}"
    # Titles set with setproctitle are padded with spaces.
    line="${line%"${line##*[![:space:]]}"}"
    printf '%s\n' "${line:0:160}"
}

pid_file() {
    printf '%s/%s.pid\n' "$RUN_DIR" "$1"
}

# Print the pid of SERVICE if its pid file names a live process. The file stores the pid
# and the process start time (field 22 of /proc/PID/stat), so a reused pid is not
# mistaken for the service.
service_pid() {
    local file pid start_time
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    read -r pid start_time <"$file" || return 1
    [[ -n "$pid" && -n "$start_time" ]] || return 1
    process_alive "$pid" || return 1
    [[ "$(proc_stat_field "$pid" 22)" == "$start_time" ]] || return 1
    printf '%s\n' "$pid"
}

# Print the pids of all live (non-zombie) processes in session SID.
session_members() {
    ps -s "$1" -o pid= -o stat= 2>/dev/null | awk '$2 !~ /^Z/ { print $1 }' || true
}

# Print this script's pid and the pids of all its ancestors. The sweep in stop skips
# them, because a shell that sourced env.sh has LOOPLINE_HOME in its environment too.
own_lineage() {
    local pid=$$
    while [[ -n "$pid" && "$pid" != "0" ]]; do
        printf '%s\n' "$pid"
        pid="$(proc_stat_field "$pid" 4 2>/dev/null)" || break
    done
}

# Print the pids of processes that belong to this LOOPLINE_HOME but are not tracked by a
# pid file: children of a service whose leader has exited (LocalExecutor workers, task
# processes, uvicorn workers) and services started by hand. A process qualifies if it
# carries MARKER in its environment. It also qualifies if its command runs airflow,
# mlflow, gunicorn, uvicorn or loopline and its working directory is LOOPLINE_HOME, or
# LOOPLINE_HOME appears in its environment or command line. The command test keeps
# shells, editors and `tail -f` of a log file out.
stray_processes() {
    local -A skip=()
    local pid file dir
    while read -r pid; do
        skip[$pid]=1
    done < <(own_lineage)

    local -A found=()
    while read -r file; do
        pid="${file#/proc/}"
        found[${pid%/environ}]=1
    done < <(grep -lzxF "$MARKER" /proc/[0-9]*/environ 2>/dev/null || true)

    local -A candidates=()
    for dir in /proc/[0-9]*; do
        if [[ "$dir/cwd" -ef "$LOOPLINE_HOME" ]]; then
            candidates[${dir#/proc/}]=1
        fi
    done
    while read -r file; do
        pid="${file#/proc/}"
        candidates[${pid%/*}]=1
    done < <(
        grep -lzxF "LOOPLINE_HOME=$LOOPLINE_HOME" /proc/[0-9]*/environ 2>/dev/null || true
        grep -lzF "$LOOPLINE_HOME" /proc/[0-9]*/cmdline 2>/dev/null || true
    )
    local service_pattern='(^|[ /])(airflow|mlflow|gunicorn|uvicorn|loopline)( |:|$)'
    for pid in "${!candidates[@]}"; do
        if [[ "$(process_cmdline "$pid")" =~ $service_pattern ]]; then
            found[$pid]=1
        fi
    done

    for pid in "${!found[@]}"; do
        if [[ -z "${skip[$pid]:-}" ]] && process_alive "$pid"; then
            printf '%s\n' "$pid"
        fi
    done
}

# --- Service definitions ---------------------------------------------------------------

# Set the global array COMMAND to the command line of SERVICE.
set_command() {
    case "$1" in
        mlflow)
            # The server's job runner starts 8 more Python processes for GenAI features
            # (scorers, prompt optimization, GenAI evaluation) that Loopline does not use.
            COMMAND=(env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server
                --host 127.0.0.1 --port "$LOOPLINE_MLFLOW_PORT" --workers 1
                --backend-store-uri "$LOOPLINE_MLFLOW_BACKEND_STORE_URI"
                --serve-artifacts --artifacts-destination "$LOOPLINE_HOME/mlflow/artifacts")
            ;;
        airflow-api-server)
            COMMAND=(airflow api-server --host 127.0.0.1 --port "$LOOPLINE_AIRFLOW_PORT" --workers 1)
            ;;
        # --skip-serve-logs: the log server would listen on all interfaces (port 8793, or
        # 8794 for the triggerer). Task logs are files under $AIRFLOW_HOME/logs on this
        # machine, and the API server reads them from there.
        airflow-scheduler) COMMAND=(airflow scheduler --skip-serve-logs) ;;
        airflow-dag-processor) COMMAND=(airflow dag-processor) ;;
        airflow-triggerer) COMMAND=(airflow triggerer --skip-serve-logs) ;;
        # Serves the default queue and the training queue. On more machines, run workers
        # with --queues default and others with --queues training (see README).
        airflow-celery-worker)
            COMMAND=(airflow celery worker --skip-serve-logs --queues "$LOOPLINE_CELERY_QUEUES"
                --concurrency "$AIRFLOW__CELERY__WORKER_CONCURRENCY")
            ;;
        model-server)
            COMMAND=(loopline serve --host 127.0.0.1 --port "$LOOPLINE_SERVER_PORT")
            ;;
        *)
            echo "error: unknown service '$1'" >&2
            return 1
            ;;
    esac
}

service_url() {
    case "$1" in
        mlflow) echo "$MLFLOW_URL" ;;
        airflow-api-server) echo "$AIRFLOW_URL" ;;
        model-server) echo "$MODEL_SERVER_URL" ;;
        *) echo "-" ;;
    esac
}

service_port() {
    case "$1" in
        mlflow) echo "$LOOPLINE_MLFLOW_PORT" ;;
        airflow-api-server) echo "$LOOPLINE_AIRFLOW_PORT" ;;
        model-server) echo "$LOOPLINE_SERVER_PORT" ;;
    esac
}

# The model server's CLI comes from the loopline package. Until its `cli` module exists
# and the package is installed in the venv, the model server is skipped, not failed.
loopline_cli_available() {
    [[ -x "$REPO/.venv/bin/loopline" ]] && "$REPO/.venv/bin/python" -c 'import loopline.cli' >/dev/null 2>&1
}

# --- start -----------------------------------------------------------------------------

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print the end of SERVICE's log after a failed start, and how to clean up.
print_log_tail() {
    local log="$LOG_DIR/$1.log"
    echo "--- last 30 lines of $log ---" >&2
    tail -n 30 "$log" >&2 || true
    echo "--- end of $log ---" >&2
    echo "The other services keep running; '$0 stop' stops them." >&2
}

# Print the database URL with its password replaced by ***.
redacted_url() {
    sed -E 's#(://[^:/@]+:)[^@]*@#\1***@#' <<<"$1"
}

migrate_airflow_db() {
    local log="$LOG_DIR/airflow-db-migrate.log"
    echo "migrating the Airflow metadata database ($(redacted_url "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")) ..."
    if ! airflow db migrate >"$log" 2>&1; then
        echo "error: airflow db migrate failed" >&2
        echo "--- last 30 lines of $log ---" >&2
        tail -n 30 "$log" >&2
        return 1
    fi
    # The training DAG's heavy task runs in this pool. Setting it again keeps the slot count
    # in step with LOOPLINE_TRAINING_POOL_SLOTS.
    if ! airflow pools set training "$LOOPLINE_TRAINING_POOL_SLOTS" "Loopline training tasks" >>"$log" 2>&1; then
        echo "error: creating the Airflow pool 'training' failed; see $log" >&2
        return 1
    fi
}

# Launch SERVICE in its own session, so that stop can signal its whole process group.
launch() {
    local name="$1" log="$LOG_DIR/$1.log" pid
    set_command "$name"

    printf '\n=== %s: starting: %s\n' "$(date -Is)" "${COMMAND[*]}" >>"$log"
    # In a non-interactive shell a background job is not a process group leader, so
    # setsid(1) calls setsid(2) without forking and $! is the service's own pid.
    # File descriptor 9 holds the lock of lock_state and must not stay open in a service.
    setsid env --chdir="$LOOPLINE_HOME" "$MARKER" "${COMMAND[@]}" </dev/null >>"$log" 2>&1 9>&- &
    pid=$!
    printf '%s %s\n' "$pid" "$(proc_stat_field "$pid" 22)" >"$(pid_file "$name")"
    echo "started $name (pid $pid, log $log)"
}

# Wait until CHECK (a command and its arguments) succeeds while SERVICE is still alive.
# DESCRIPTION names what is awaited in the progress and error messages.
wait_for_service() {
    local name="$1" description="$2" deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    echo "waiting for $description ..."
    until "$@" >/dev/null 2>&1; do
        if ! service_pid "$name" >/dev/null; then
            echo "error: $name exited while waiting for $description" >&2
            print_log_tail "$name"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "error: timed out after ${START_TIMEOUT}s waiting for $description" >&2
            print_log_tail "$name"
            return 1
        fi
        sleep 1
    done
}

http_ok() {
    curl -fsS -o /dev/null --max-time 5 "$1"
}

# Succeed when the log of SERVICE, after its latest start header, contains PATTERN.
log_has_line() {
    awk -v pattern="$2" '/^=== .*: starting: / { found = 0 } index($0, pattern) { found = 1 } END { exit !found }' \
        "$LOG_DIR/$1.log"
}

# Print the status ("healthy", "unhealthy" or "null") of COMPONENT in the JSON body of
# Airflow's /api/v2/monitor/health.
airflow_component_status() {
    curl -fsS --max-time 5 "$AIRFLOW_URL/api/v2/monitor/health" 2>/dev/null |
        python3 -c 'import json, sys; print((json.load(sys.stdin).get(sys.argv[1]) or {}).get("status"))' "$1" 2>/dev/null
}

# Succeed when the API server reports a recent heartbeat of COMPONENT (scheduler,
# dag_processor or triggerer). Airflow treats a heartbeat older than its health check
# threshold as unhealthy.
airflow_component_healthy() {
    [[ "$(airflow_component_status "$1")" == "healthy" ]]
}

wait_until_ready() {
    case "$1" in
        mlflow) wait_for_service mlflow "the MLflow tracking server on $MLFLOW_URL/health" http_ok "$MLFLOW_URL/health" ;;
        airflow-api-server)
            wait_for_service airflow-api-server "the airflow api-server on $AIRFLOW_URL/api/v2/monitor/health" \
                http_ok "$AIRFLOW_URL/api/v2/monitor/health"
            ;;
        airflow-scheduler | airflow-dag-processor | airflow-triggerer)
            local component="${1#airflow-}"
            component="${component//-/_}"
            wait_for_service "$1" "a $component heartbeat in $AIRFLOW_URL/api/v2/monitor/health" \
                airflow_component_healthy "$component"
            ;;
        # Celery prints "celery@<host> ready." once the worker consumes its queues.
        airflow-celery-worker)
            wait_for_service airflow-celery-worker "the Celery worker to log ' ready.'" \
                log_has_line airflow-celery-worker " ready."
            ;;
        model-server) wait_for_service model-server "the model server on $MODEL_SERVER_URL/health" http_ok "$MODEL_SERVER_URL/health" ;;
    esac
}

start_services() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$LOOPLINE_HOME/mlflow/artifacts"

    local name pid port need_migrate=false
    local -a to_start=()
    for name in "${SERVICES[@]}"; do
        if pid="$(service_pid "$name")"; then
            echo "$name is already running (pid $pid)"
            continue
        fi
        if [[ "$name" == model-server ]] && ! loopline_cli_available; then
            echo "model-server: skipped: the loopline CLI is not importable from $REPO/.venv" \
                "(.venv/bin/loopline missing or 'import loopline.cli' failed)." \
                "Run 'make venv' once include/loopline/cli.py exists."
            continue
        fi
        port="$(service_port "$name")"
        if [[ -n "$port" ]] && port_in_use "$port"; then
            echo "error: cannot start $name: another process already listens on 127.0.0.1:$port." \
                "Stop it, or choose another port with the matching LOOPLINE_*_PORT variable." >&2
            return 1
        fi
        to_start+=("$name")
        if [[ "$name" == airflow-* ]]; then
            need_migrate=true
        fi
    done

    if [[ "$need_migrate" == true ]]; then
        migrate_airflow_db
    fi
    for name in "${to_start[@]}"; do
        launch "$name"
    done

    # Services already running are checked too, so that start fails if one of them is not
    # responding.
    for name in "${SERVICES[@]}"; do
        if service_pid "$name" >/dev/null; then
            wait_until_ready "$name"
        fi
    done
    # Airflow creates the passwords file with mode 644.
    if [[ -f "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ]]; then
        chmod 600 "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    fi

    echo
    show_status
    echo
    echo "Airflow UI: $AIRFLOW_URL (user admin). The API server writes the password on its"
    echo "first start to $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
}

# --- stop ------------------------------------------------------------------------------

stop_services() {
    mkdir -p "$RUN_DIR"
    local -a sessions=()
    local name pid index

    # Signal in the reverse of the start order, so that MLflow stops last.
    for ((index = ${#SERVICES[@]} - 1; index >= 0; index--)); do
        name="${SERVICES[$index]}"
        if pid="$(service_pid "$name")"; then
            if [[ "$name" == airflow-scheduler ]]; then
                # Seen with Airflow 3.3.2: after SIGTERM to the whole group, the scheduler
                # waited for its LocalExecutor workers until SIGKILL, most likely because
                # a worker died while it held the lock of their shared queue. Only the
                # scheduler gets SIGTERM, and it ends its workers through that queue.
                echo "stopping $name (pid $pid): SIGTERM to pid $pid"
                kill -TERM "$pid" 2>/dev/null || true
            else
                echo "stopping $name (pid $pid): SIGTERM to process group $pid"
                kill -TERM -- "-$pid" 2>/dev/null || true
            fi
            sessions+=("$pid")
        else
            echo "$name is not running"
        fi
        rm -f "$(pid_file "$name")"
    done

    # Processes that moved to their own process group (Airflow runs each task in one)
    # stay in the service's session, so the session is what is waited for.
    local deadline=$((SECONDS + STOP_TIMEOUT)) remaining
    while :; do
        remaining=""
        for pid in "${sessions[@]}"; do
            remaining+="$(session_members "$pid")"
        done
        [[ -z "$remaining" ]] && break
        if ((SECONDS >= deadline)); then
            for pid in "${sessions[@]}"; do
                while read -r member; do
                    [[ -n "$member" ]] || continue
                    echo "still running after ${STOP_TIMEOUT}s, sending SIGKILL: pid $member: $(process_cmdline "$member")"
                    kill -KILL "$member" 2>/dev/null || true
                done < <(session_members "$pid")
            done
            break
        fi
        sleep 0.5
    done

    kill_strays
}

kill_strays() {
    local -a strays=()
    local pid
    mapfile -t strays < <(stray_processes)
    if ((${#strays[@]} == 0)); then
        echo "no leftover processes of $LOOPLINE_HOME"
        return 0
    fi

    for pid in "${strays[@]}"; do
        echo "stopping leftover process $pid: $(process_cmdline "$pid")"
        kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        local alive=false
        for pid in "${strays[@]}"; do
            process_alive "$pid" && alive=true
        done
        [[ "$alive" == false ]] && return 0
        sleep 0.5
    done
    for pid in "${strays[@]}"; do
        if process_alive "$pid"; then
            echo "sending SIGKILL to leftover process $pid"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# --- status ----------------------------------------------------------------------------

show_status() {
    local name pid state note
    for name in "${SERVICES[@]}"; do
        note=""
        if pid="$(service_pid "$name")"; then
            state="running"
        else
            pid="-"
            state="stopped"
            if [[ "$name" == model-server ]] && ! loopline_cli_available; then
                note=" (loopline CLI not installed)"
            fi
        fi
        printf '%-22s %-8s pid %-8s %s%s\n' "$name" "$state" "$pid" "$(service_url "$name")" "$note"
    done
}

# --- main ------------------------------------------------------------------------------

# Hold an exclusive lock for the rest of this script, so that only one start or stop runs
# at a time on one LOOPLINE_HOME.
lock_state() {
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/services.lock"
    if ! flock -w 300 9; then
        echo "error: timed out after 300s waiting for another start or stop on $LOOPLINE_HOME" >&2
        return 1
    fi
}

main() {
    if (($# != 1)); then
        echo "usage: $0 start|stop|status" >&2
        return 2
    fi

    case "$1" in
        start | stop) lock_state ;;
    esac

    case "$1" in
        start) start_services ;;
        stop) stop_services ;;
        status) show_status ;;
        *)
            echo "usage: $0 start|stop|status" >&2
            return 2
            ;;
    esac
}

main "$@"
