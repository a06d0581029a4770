"""Diffusion: noise schedulers (DDPM, DDIM) and the text-to-image sampling loop with classifier-free guidance."""
