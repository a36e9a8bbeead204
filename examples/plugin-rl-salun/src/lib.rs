//! Placeholder: RL and SalUn are being written.
