"""The peakguard policy pack: rules that would have prevented the outage, for PR CI and `pulumi preview`."""
