//! A fresh KV pool takes no resident memory until sequences write to it, in either number
//! type: the default pool is 40% of the machine's memory, and a pool resident from the start
//! would hold all of it whatever the load. (Its own process: resident memory is per process.)

use phive::nn::kv_cache::{KvDtype, KvGeometry, KvPool};
use phive::quant::memory_stats;

#[test]
fn a_fresh_pool_is_not_resident() {
    const MIB: u64 = 1 << 20;
    for dtype in [KvDtype::F32, KvDtype::F16] {
        let geometry = KvGeometry { num_layers: 8, kv_heads: 8, head_dim: 128, block_size: 16, dtype };
        let blocks = (1024 * MIB / geometry.bytes_per_block() as u64) as usize;
        let before = memory_stats().rss;
        let mut pool = KvPool::new(geometry, blocks);
        let grown = memory_stats().rss.saturating_sub(before);
        assert!(grown < 64 * MIB, "{dtype}: a fresh 1 GiB pool made {} MiB resident", grown / MIB);
        // Writing one block's positions makes (only) those pages resident, and reads back.
        let row = vec![0.5f32; 16 * 8 * 128];
        pool.write(3, &[7], 0, &row, &row).unwrap();
        let (k, _) = pool.gather(3, &[7], 16, &candle_core::Device::Cpu).unwrap();
        assert_eq!(k.flatten_all().unwrap().to_vec1::<f32>().unwrap(), row, "{dtype}");
        drop(pool);
    }
}
