"""Training and export code for the lungseg nodule segmentation models."""
