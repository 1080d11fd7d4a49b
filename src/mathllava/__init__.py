"""mathllava: domain logic for the Math-LLaVA data and model pipeline (no ZenML imports)."""
