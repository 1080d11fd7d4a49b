"""`python -m mathllava.train`: the training entry point torchrun starts on every worker."""

from .cli import main

raise SystemExit(main())
