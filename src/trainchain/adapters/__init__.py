"""One module per outside system (git, MLflow, Optuna, SMTP, Docker images, Jenkins, files and
locks): each turns that system's errors into trainchain's.
"""
