"""Knowledge transfer by clustering (Noroozi et al. 2018): features -> k-means pseudo-labels -> student."""
