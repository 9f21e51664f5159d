"""Loopline: a closed-loop ML system. The domain library; it never imports Airflow."""

__version__ = "0.1.0"
