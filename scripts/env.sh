# shellcheck shell=bash
# Environment of Loopline's local profile: paths, ports and the Airflow configuration.
#
# Source it, don't run it:  source scripts/env.sh
# Every variable below except PATH keeps a value that the caller has already set, so a
# test or CI run can move the state (LOOPLINE_HOME), the ports or any AIRFLOW__* option.
# The Airflow option names were checked against
# airflow/config_templates/config.yml of apache-airflow-core 3.3.2.

# --- Paths -----------------------------------------------------------------------------

if [[ -z "${REPO:-}" ]]; then
    REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi
export REPO

: "${LOOPLINE_HOME:=$REPO/.loopline}"
mkdir -p "$LOOPLINE_HOME"
# Airflow requires absolute paths, so a relative LOOPLINE_HOME is resolved here.
LOOPLINE_HOME="$(cd "$LOOPLINE_HOME" && pwd)"
export LOOPLINE_HOME

case ":$PATH:" in
    ":$REPO/.venv/bin:"*) ;;
    *) export PATH="$REPO/.venv/bin:$PATH" ;;
esac

# --- Ports and URLs of the local services ----------------------------------------------

export LOOPLINE_AIRFLOW_PORT="${LOOPLINE_AIRFLOW_PORT:-8080}"
export LOOPLINE_MLFLOW_PORT="${LOOPLINE_MLFLOW_PORT:-5000}"
export LOOPLINE_SERVER_PORT="${LOOPLINE_SERVER_PORT:-8000}"
# Tasks and the model server send their requests to the MLflow tracking server rather than
# open its SQLite file, so only one process writes the MLflow database.
export LOOPLINE_MLFLOW_TRACKING_URI="${LOOPLINE_MLFLOW_TRACKING_URI:-http://127.0.0.1:$LOOPLINE_MLFLOW_PORT}"

# The MLflow server's backend store. The production profile points it at PostgreSQL.
export LOOPLINE_MLFLOW_BACKEND_STORE_URI="${LOOPLINE_MLFLOW_BACKEND_STORE_URI:-sqlite:///$LOOPLINE_HOME/mlflow/mlflow.db}"

# --- Shared secrets --------------------------------------------------------------------

# Print the secret stored in FILE, first creating FILE (mode 600) with 32 random bytes in
# URL-safe base64. That encoding is also a valid Fernet key. The value is written to a
# temporary file and hard-linked into place, so a concurrent caller never reads a partly
# written file, and the first link wins if two callers create it at once.
_loopline_secret() {
    local file="$1" tmp
    if [[ ! -s "$file" ]]; then
        tmp="$(umask 077 && mktemp "$file.XXXXXX")"
        head -c 32 /dev/urandom | base64 -w 0 | tr '+/' '-_' >"$tmp"
        ln "$tmp" "$file" 2>/dev/null || true
        rm -f "$tmp"
    fi
    chmod 600 "$file"
    cat "$file"
}

_loopline_secrets_dir="$LOOPLINE_HOME/secrets"
mkdir -p "$_loopline_secrets_dir"
chmod 700 "$_loopline_secrets_dir"

# The API server, scheduler, dag-processor, triggerer and task processes each read these.
# If each process generated its own value, tokens signed by one component would be
# rejected by another, so the values are created once and exported to all of them.
: "${AIRFLOW__API_AUTH__JWT_SECRET:=$(_loopline_secret "$_loopline_secrets_dir/airflow_jwt_secret")}"
: "${AIRFLOW__API__SECRET_KEY:=$(_loopline_secret "$_loopline_secrets_dir/airflow_api_secret_key")}"
# Encrypts connection passwords and variables in the metadata database.
: "${AIRFLOW__CORE__FERNET_KEY:=$(_loopline_secret "$_loopline_secrets_dir/airflow_fernet_key")}"
export AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY AIRFLOW__CORE__FERNET_KEY

unset -f _loopline_secret
unset _loopline_secrets_dir

# --- Airflow ---------------------------------------------------------------------------

export AIRFLOW_HOME="${AIRFLOW_HOME:-$LOOPLINE_HOME/airflow}"
mkdir -p "$AIRFLOW_HOME"

export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$REPO/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$REPO/plugins}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db}"
# A 60 s SQLite busy timeout: see AIRFLOW_SQLITE_CONNECT_ARGS in include/loopline/settings.py.
if [[ "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" == sqlite* ]]; then
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS:-loopline.settings.AIRFLOW_SQLITE_CONNECT_ARGS}"
fi
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"

# Sized for the 2-core machines that developers and CI use. Each running task is its own
# Python process (a supervisor and the task itself), and the training and validation
# tasks are CPU-bound, so more than 2 tasks of one DAG at a time only compete for the
# 2 cores. A total of 4 leaves room for a second DAG's tasks, such as sensors, which
# mostly wait. Export larger values on a bigger machine.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-2}"

# Slots of the pool that training tasks run in; the CeleryExecutor also sends them to the
# training queue. The Celery worker of the production profile serves these queues.
export LOOPLINE_TRAINING_POOL_SLOTS="${LOOPLINE_TRAINING_POOL_SLOTS:-1}"
export LOOPLINE_CELERY_QUEUES="${LOOPLINE_CELERY_QUEUES:-default,training}"
export AIRFLOW__CELERY__WORKER_CONCURRENCY="${AIRFLOW__CELERY__WORKER_CONCURRENCY:-2}"

# The API server serves the UI, the public REST API and the execution API that task
# processes call back into. It listens on loopback only.
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-$LOOPLINE_AIRFLOW_PORT}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW__API__PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$AIRFLOW__API__PORT/execution/}"

# The simple auth manager creates a random password for each user on the first start of
# the API server and stores it in this JSON file.
export AIRFLOW__CORE__AUTH_MANAGER="${AIRFLOW__CORE__AUTH_MANAGER:-airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"

# Look for new DAG files every 10 s instead of the default 300 s.
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-10}"

# The scheduler's health check server is off by default (enable_health_check = False),
# but its default host is 0.0.0.0, so it stays on loopback if someone turns it on.
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST="${AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST:-127.0.0.1}"
