"""vosr: vision-only generative super-resolution."""
