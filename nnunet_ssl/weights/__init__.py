"""Weights: checkpoint files (atomic saving, loading ours / nnU-Net's / nnssl's), transfer of pre-trained weights
into a downstream network, encoder freezing, and the network parts (encoder, decoder, stages) they address."""
