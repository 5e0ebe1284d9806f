"""Spiking student and ANN teachers."""
