"""Kubeflow Pipelines: executor output for the KFP UI, compiling, the client, run artifacts.

  executor   the executor output a stage writes for the KFP UI (standard library only: every
             stage imports it, in images without the KFP SDK)
  package    the compiled pipeline: compile when stale, its parameters, version names
  client     kfp.Client calls: upload a pipeline version, experiments, start and follow a run
  artifacts  a finished run's metrics files in S3-compatible storage

Named ``kubeflow`` (not ``kfp``) so it never shadows the SDK. The modules import fast; the rest
of what they need (the ``kfp`` extra, boto3, PyYAML) is imported by the calls that use it.
"""
