"""Speech and audio encoders (Zipformer, Transformer, bidirectional Mamba, AuM, AST) behind one interface."""
