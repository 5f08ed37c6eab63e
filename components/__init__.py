"""Kubeflow Pipelines container components, one folder per ``charlie <stage>``: interfaces only."""
