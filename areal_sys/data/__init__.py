"""Prompt data: the built-in synthetic arithmetic task and loaders for local datasets.

Submodules are imported explicitly (`areal_sys.data.synthetic`, ...) so that importing this
package stays cheap.
"""
