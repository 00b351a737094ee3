"""Pseudo labels from saliency and class regions (CREATE_GUIDE)."""
