"""The pre-training methods as plain torch: views and their alignment, masking, teachers, heads, objectives,
gradient matching, the two-decoder network and semi-supervised losses. Nothing here imports nnunetv2 (a unit test
checks it), so every method can be tested and reused without nnU-Net."""
