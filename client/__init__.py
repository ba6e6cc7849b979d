"""fedkube.client"""
