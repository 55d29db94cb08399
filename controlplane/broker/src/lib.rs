//! Broker policies (pure logic).
