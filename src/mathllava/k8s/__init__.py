"""Training on Kubernetes: typed job settings, Kubeflow TrainJob/PyTorchJob manifests, a watch-based
launcher, GPU-hour estimates and the s3:// staging the job's pods run."""
