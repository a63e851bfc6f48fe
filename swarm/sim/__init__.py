"""The simulation harness: many real `sapo run` processes on one machine, with churn and adversaries."""
