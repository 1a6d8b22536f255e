"""Networks: the VOSR transformer and its layers, the frozen autoencoders and semantic encoder,
and loading of released or exported weights."""
