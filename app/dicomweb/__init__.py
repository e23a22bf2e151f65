"""DICOMweb resources (PS3.18), one module per service.

Only this package and ``app.main`` import litestar.
"""
