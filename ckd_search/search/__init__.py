"""Search: YAML spaces, Ray Tune + Optuna + ASHA, MLflow tracking, export."""
