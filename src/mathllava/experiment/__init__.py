"""Data-recipe experiments: one model per arm × seed at equal compute, scored on the same held-out sets,
with bootstrap intervals and paired differences (`mathllava experiment run`)."""
