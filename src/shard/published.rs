//! A value one thread publishes for every core of the process (the pool's roster, the edge's home pools): a core
//! compares one integer per tick, and clones the `Arc` only when the generation moved. Read-only for the cores:
//! they take a new value whole, never write to it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Published<T> {
    value: Mutex<Arc<T>>,
    generation: AtomicU64,
}

impl<T> Published<T> {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arc<T> {
        match self.value.lock() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn publish(&self, value: T) {
        let mut slot = match self.value.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        *slot = Arc::new(value);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
