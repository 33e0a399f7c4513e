"""bsp_models: video encoders (TSM) and heads for boundary-sensitive pre-training.

Empty until the training issue lands; kept as a package so the layout is final."""
