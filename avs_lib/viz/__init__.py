"""Figures (matplotlib) and interactive explorers (ipywidgets + plotly)."""
