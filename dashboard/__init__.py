"""fedkube.dashboard"""
