"""Loading models by reference and building the tiny default's models."""
