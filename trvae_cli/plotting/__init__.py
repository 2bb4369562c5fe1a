"""The paper's figures: builders in :mod:`.figures`, command functions in :mod:`.commands`."""

from .commands import plot_compare, plot_gene, plot_history, plot_images, plot_latent, plot_regression

__all__ = ["plot_compare", "plot_gene", "plot_history", "plot_images", "plot_latent", "plot_regression"]
