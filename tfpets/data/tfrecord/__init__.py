"""TFRecord formats: StyleGAN multi-resolution (multires) and sharded image records (shards)."""
