"""Monocular depth, camera motion and intrinsics with a LoRA-adapted foundation model (Depth Anything / DINOv2)."""
