"""Speech encoders (Zipformer, Transformer, bidirectional Mamba) behind one interface."""
