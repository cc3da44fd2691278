"""The customer-service intent model and the service that runs it. Imports nothing of peakguard's
other packages: it ships alone, in its own image."""
