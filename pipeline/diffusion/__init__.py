"""The diffusion family (issue 22): a small class-conditional DDPM, its sampling and training, the generation
metrics (classifier accuracy on samples, an FID proxy, noise statistics), the relearning attack, sample grids and
the plain run functions the Ray loop (pipeline/train/diffusion_loop.py) calls. docs/diffusion.md explains each
choice. Nothing here imports Ray."""
