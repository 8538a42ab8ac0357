"""Networks: 3D ResNet encoder, decoder, fusion, prototype head, models."""
