"""Data: ingesting unlabeled images as an nnU-Net dataset, the unlabeled pool and two-view loader, label budgets,
ReFs reference datasets, plans compatibility and editing, and the synthetic demo dataset."""
