"""The main job: every part of the loop started together, driven by simulated users."""
