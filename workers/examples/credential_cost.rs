//! What one saga credential costs to check alone and in groups, on this machine: the figures
//! behind `runtime::credential_batch`'s group sizes. Run with
//! `cargo run --release -p eventline-workers --example credential_cost`.

use std::time::Instant;

use ed25519_dalek::{Signer, SigningKey, Verifier};

fn main() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let verifying = key.verifying_key();
    // Inputs shaped like a step's credential input (domain tag, id, type, body).
    let inputs: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            format!(
                "eventline service credential v1: orders\nstep-{i}\ncatalog.reserve_stock\n{{\"order\":\"{i}\",\"quantity\":1}}"
            )
            .into_bytes()
        })
        .collect();
    let signatures: Vec<_> = inputs.iter().map(|m| key.sign(m)).collect();
    let rounds = 2000;

    let started = Instant::now();
    for i in 0..rounds {
        let j = i % inputs.len();
        verifying
            .verify(&inputs[j], &signatures[j])
            .expect("a genuine signature verifies");
    }
    println!("check alone        {:6.1} µs", micros(started, rounds));

    let started = Instant::now();
    for i in 0..rounds {
        std::hint::black_box(key.sign(&inputs[i % inputs.len()]));
    }
    println!("sign               {:6.1} µs", micros(started, rounds));

    for n in [2usize, 4, 8, 16, 32, 64] {
        let group: Vec<&[u8]> = inputs[..n].iter().map(Vec::as_slice).collect();
        let keys = vec![verifying; n];
        let groups = 4000 / n;
        let started = Instant::now();
        for _ in 0..groups {
            ed25519_dalek::verify_batch(&group, &signatures[..n], &keys)
                .expect("a genuine group verifies");
        }
        println!(
            "group of {n:2}        {:6.1} µs a signature",
            micros(started, groups * n)
        );
    }
}

fn micros(started: Instant, count: usize) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / count as f64
}
