"""Building blocks of the night simulator; the public entry point is :mod:`tilestack.simulate`.

``render`` draws stars and galaxies exactly, ``sky`` makes the fixed scene, ``timeline`` the
per-frame conditions and true transforms, ``sensor`` the camera, ``night`` ties them together.
"""
