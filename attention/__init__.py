"""Grad-CAM class regions (CREATE_ATTENTION)."""
