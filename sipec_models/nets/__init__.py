"""Network architectures in plain PyTorch (no torchvision): one module per network family."""
