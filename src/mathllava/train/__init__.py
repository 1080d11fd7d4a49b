"""Fine-tuning: the built-in tiny base, training data encoding, and the one training path
(`run_training`), used by `mathllava train`, torchrun workers and the pipeline's train step."""
