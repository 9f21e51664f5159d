"""A small customer data set, as a user would bring it: declared in config, dropped as files."""

from __future__ import annotations

import datetime as dt

# Three days of a customer feed, as a user would drop them: one CSV per day, the label
# spelled "yes"/"no". Every row of these days is valid.
CUSTOMER_DAYS = [dt.date(2024, 6, 1), dt.date(2024, 6, 2), dt.date(2024, 6, 3)]
CUSTOMER_HEADER = "customer_id,signup_time,age,income,plan,churned"

CUSTOMER_CONFIG = {
    "feature_set": {
        "name": "customers",
        "version": "v1",
        "entity_key": "customer_id",
        "event_time": "signup_time",
        "label": "churned",
        "numerical": ["age", "income"],
        "categorical": ["plan"],
    },
    "schema": {
        "entity_key": "customer_id",
        "event_time": "signup_time",
        "columns": {
            "customer_id": {"type": "string", "nullable": False},
            "signup_time": {"type": "timestamp", "nullable": False},
            "age": {"type": "int", "min": 0, "max": 120},
            "income": {"type": "float", "min": 0},
            "plan": {"type": "string", "nullable": False, "allowed_values": ["basic", "pro"]},
        },
        "label": {"column": "churned", "mapping": {"yes": 1, "no": 0}},
    },
    "validation": {"max_quarantine_share": 0.5},
    "monitoring": {"policy_version": "test", "rules": []},
}


def customer_rows(day: dt.date, count: int = 6) -> list[str]:
    """Return ``count`` valid CSV rows of ``day``, one signup every 20 minutes from 08:00 UTC."""
    rows = []
    for number in range(count):
        customer = f"C{day:%m%d}{number:02d}"
        plan = "pro" if number % 3 == 0 else "basic"
        label = "yes" if number % 2 else "no"
        time = dt.datetime.combine(day, dt.time(8)) + dt.timedelta(minutes=20 * number)
        rows.append(f"{customer},{time:%Y-%m-%dT%H:%M:%S}Z,{30 + number},{1000 + 10 * number}.5,{plan},{label}")
    return rows
