"""lrscale's Hydra plugins (Hydra loads sweepers from the `hydra_plugins` namespace only)."""
