"""The domain: plain types, the pure decision core, the ports (Protocols) adapters implement, and errors.

Nothing in this package does I/O; everything else in the supervisor is an adapter around it.
"""
