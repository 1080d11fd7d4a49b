"""The ZenML side of the `mathllava` library, installed beside it: what must import ZenML but is needed outside a
pipeline run too (the registry CLI's stage listener). The library itself imports no ZenML."""
