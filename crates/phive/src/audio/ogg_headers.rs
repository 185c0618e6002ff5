//! Checks on the header packets of an Ogg stream before symphonia reads them.
//!
//! symphonia 0.5 trusts sizes written inside two Vorbis header packets:
//! - the comment header (Vorbis `\x03vorbis`, Opus `OpusTags`): every comment length is
//!   allocated before it is read, so 30 bytes can ask for 4 GB;
//! - the setup header (`\x05vorbis`): each codebook's entry count and dimensions size tables that
//!   are filled before anything checks them (a few hundred bits can ask for terabytes), and some
//!   shapes make it panic (zero dimensions, a lookup table whose side overflows).
//!
//! So phive walks the Ogg pages the way symphonia does (capture pattern, CRC, lacing, packets
//! continued across pages), and refuses a stream whose header packets declare more than their
//! own bytes or than any real encoder writes. Everything else is left to symphonia.

use std::collections::HashMap;

use crate::{Error, Result};

/// Most codebook entries, summed over a setup header's codebooks, and likewise most entries of
/// their lookup tables (entries × dimensions). Both are far above what libvorbis writes (tens of
/// thousands) and bound symphonia's tables to 16 MB each.
const MAX_CODEBOOK_VALUES: u64 = 1 << 22;

/// Refuses `bytes` if it is an Ogg stream whose header packets would make symphonia allocate
/// far beyond the input or panic. Anything that is not Ogg passes.
pub(super) fn check_ogg_headers(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(b"OggS") {
        return Ok(());
    }
    let mut partial: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut pos = 0;
    while let Some(found) = find_capture(bytes, pos) {
        let Some(page) = Page::parse(&bytes[found..]) else {
            // Not a page (bad version, cut short, wrong CRC): symphonia resynchronises past it.
            pos = found + 1;
            continue;
        };
        pos = found + page.len;
        let mut carried = partial.remove(&page.serial).filter(|_| page.continued);
        for (i, (piece, complete)) in page.pieces().into_iter().enumerate() {
            let head = if i == 0 && page.continued {
                // A continuation with nothing before it is dropped, as symphonia drops it.
                let Some(head) = carried.take() else { continue };
                Some(head)
            } else {
                None
            };
            match (head, complete) {
                (None, true) => check_packet(piece)?,
                (Some(mut head), true) => {
                    head.extend_from_slice(piece);
                    check_packet(&head)?;
                }
                (head, false) => {
                    let mut head = head.unwrap_or_default();
                    head.extend_from_slice(piece);
                    partial.insert(page.serial, head);
                }
            }
        }
    }
    Ok(())
}

/// One Ogg page that passed its CRC.
struct Page<'a> {
    serial: u32,
    /// The first packet on the page continues one from the previous page.
    continued: bool,
    lacing: &'a [u8],
    body: &'a [u8],
    /// Bytes from the capture pattern to the end of the body.
    len: usize,
}

impl<'a> Page<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        const HEADER: usize = 27;
        let header = bytes.get(..HEADER)?;
        if header[4] != 0 {
            return None;
        }
        let lacing = bytes.get(HEADER..HEADER + usize::from(header[26]))?;
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let len = HEADER + lacing.len() + body_len;
        let page = bytes.get(..len)?;
        let stored = u32::from_le_bytes([header[22], header[23], header[24], header[25]]);
        if ogg_crc(page) != stored {
            return None;
        }
        Some(Self {
            serial: u32::from_le_bytes([header[14], header[15], header[16], header[17]]),
            continued: header[5] & 1 != 0,
            lacing,
            body: &page[HEADER + lacing.len()..],
            len,
        })
    }

    /// The packet pieces on the page, each with whether its packet ends there (a lacing value
    /// under 255) or goes on in the next page.
    fn pieces(&self) -> Vec<(&'a [u8], bool)> {
        let mut pieces = Vec::new();
        let (mut start, mut end) = (0, 0);
        for (i, &l) in self.lacing.iter().enumerate() {
            end += usize::from(l);
            let complete = l < 255;
            if complete || i + 1 == self.lacing.len() {
                pieces.push((&self.body[start..end], complete));
                start = end;
            }
        }
        pieces
    }
}

fn find_capture(bytes: &[u8], from: usize) -> Option<usize> {
    bytes.get(from..)?.windows(4).position(|w| w == b"OggS").map(|i| from + i)
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, not reflected, initial value 0) of a page whose CRC
/// field counts as zero.
fn ogg_crc(page: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut r = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
                bit += 1;
            }
            table[i] = r;
            i += 1;
        }
        table
    };
    page.iter().enumerate().fold(0u32, |crc, (i, &b)| {
        let b = if (22..26).contains(&i) { 0 } else { b };
        (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize]
    })
}

fn check_packet(packet: &[u8]) -> Result<()> {
    if let Some(rest) = packet.strip_prefix(b"\x03vorbis").or_else(|| packet.strip_prefix(b"OpusTags")) {
        check_comments(rest)
    } else if let Some(rest) = packet.strip_prefix(b"\x05vorbis") {
        check_codebooks(rest)
    } else {
        Ok(())
    }
}

fn malformed(what: String) -> Error {
    Error::Media(format!("cannot decode audio: malformed Ogg header: {what}"))
}

/// A comment header: a vendor string, then a count of comments; each string is a length and
/// its bytes.
fn check_comments(mut rest: &[u8]) -> Result<()> {
    if !take_string(&mut rest)? {
        return Ok(());
    }
    let Some(count) = take_u32(&mut rest) else { return Ok(()) };
    for _ in 0..count {
        if !take_string(&mut rest)? {
            break;
        }
    }
    Ok(())
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (value, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_le_bytes(*value))
}

/// Skips one length-prefixed string; `false` at the end of the packet (where the decoder stops
/// too), an error if the length runs past it.
fn take_string(rest: &mut &[u8]) -> Result<bool> {
    let Some(len) = take_u32(rest) else { return Ok(false) };
    let Some(tail) = rest.get(len as usize..) else {
        return Err(malformed(format!(
            "a comment of {len} bytes in a comment header with {} bytes left",
            rest.len()
        )));
    };
    *rest = tail;
    Ok(true)
}

/// The codebooks at the start of a Vorbis setup header (Vorbis I specification, 3.2.1), read
/// bit for bit as the decoder reads them, up to the first that does not parse.
fn check_codebooks(rest: &[u8]) -> Result<()> {
    let mut bits = Bits::new(rest);
    let Some(count) = bits.read(8) else { return Ok(()) };
    let (mut entries_total, mut lookup_total) = (0u64, 0u64);
    for _ in 0..=count {
        let Some(sync) = bits.read(24) else { return Ok(()) };
        if sync != 0x56_4342 {
            return Ok(());
        }
        let (Some(dims), Some(entries)) = (bits.read(16), bits.read(24)) else { return Ok(()) };
        entries_total += u64::from(entries);
        if entries_total > MAX_CODEBOOK_VALUES {
            return Err(malformed(format!("its codebooks declare more than {MAX_CODEBOOK_VALUES} entries")));
        }
        if bits.skip_code_lengths(entries).is_none() {
            return Ok(());
        }
        let Some(lookup_type) = bits.read(4) else { return Ok(()) };
        if lookup_type == 0 {
            continue;
        }
        if lookup_type > 2 {
            return Ok(());
        }
        if dims == 0 {
            return Err(malformed("a codebook with a lookup table and no dimensions".into()));
        }
        lookup_total += u64::from(entries) * u64::from(dims);
        if lookup_total > MAX_CODEBOOK_VALUES {
            return Err(malformed(format!(
                "its codebook lookup tables declare more than {MAX_CODEBOOK_VALUES} values"
            )));
        }
        let values = if lookup_type == 1 {
            lookup1_values(entries, dims)
                .ok_or_else(|| malformed(format!("a codebook of {entries} entries in {dims} dimensions")))?
        } else {
            entries * dims
        };
        // The minimum and delta (32 bits each), the value width, the sequence flag.
        if bits.skip(64).is_none() {
            return Ok(());
        }
        let (Some(value_bits), Some(_sequence)) = (bits.read(4), bits.read(1)) else { return Ok(()) };
        if bits.skip(u64::from(values) * u64::from(value_bits + 1)).is_none() {
            return Ok(());
        }
    }
    Ok(())
}

/// The side of a type-1 lookup table as symphonia computes it (an `f32` root), or `None` where
/// its own consistency checks would fail or overflow.
fn lookup1_values(entries: u32, dims: u32) -> Option<u32> {
    let value = (entries as f32).powf(1.0 / dims as f32).floor() as u32;
    let low = value.checked_pow(dims)?;
    let high = (value + 1).checked_pow(dims)?;
    (low <= entries && high > entries).then_some(value)
}

/// An LSB-first bit reader, the Vorbis packing.
struct Bits<'a> {
    bytes: &'a [u8],
    /// Position in bits.
    pos: u64,
}

impl<'a> Bits<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next `n` (≤ 32) bits, or `None` past the end.
    fn read(&mut self, n: u32) -> Option<u32> {
        let mut value = 0u64;
        for i in 0..u64::from(n) {
            let bit = self.pos + i;
            let byte = *self.bytes.get(usize::try_from(bit / 8).ok()?)?;
            value |= u64::from((byte >> (bit % 8)) & 1) << i;
        }
        self.pos += u64::from(n);
        Some(value as u32)
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        self.pos = self.pos.checked_add(n)?;
        (self.pos <= self.bytes.len() as u64 * 8).then_some(())
    }

    /// Skips a codebook's codeword lengths: ordered runs, or one (sparse: optional) 5-bit
    /// length per entry.
    fn skip_code_lengths(&mut self, entries: u32) -> Option<()> {
        if self.read(1)? == 1 {
            self.read(5)?;
            let mut done = 0u32;
            while done < entries {
                let width = 32 - (entries - done).leading_zeros();
                done = done.checked_add(self.read(width)?)?;
            }
            return (done == entries).then_some(());
        }
        if self.read(1)? == 1 {
            for _ in 0..entries {
                if self.read(1)? == 1 {
                    self.read(5)?;
                }
            }
            Some(())
        } else {
            self.skip(u64::from(entries) * 5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../../tests/fixtures/audio/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    /// One page with its CRC.
    fn raw_page(serial: u32, continued: bool, lacing: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = b"OggS\0".to_vec();
        v.push(u8::from(continued));
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&serial.to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.push(lacing.len() as u8);
        v.extend_from_slice(lacing);
        v.extend_from_slice(body);
        let crc = ogg_crc(&v);
        v[22..26].copy_from_slice(&crc.to_le_bytes());
        v
    }

    /// One page carrying whole `packets` of a logical stream.
    fn page(serial: u32, packets: &[&[u8]]) -> Vec<u8> {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        raw_page(serial, false, &lacing, &packets.concat())
    }

    fn comment_header(lengths: &[u32], count: u32) -> Vec<u8> {
        let mut p = b"\x03vorbis".to_vec();
        p.extend_from_slice(&4u32.to_le_bytes());
        p.extend_from_slice(b"phiv");
        p.extend_from_slice(&count.to_le_bytes());
        for &len in lengths {
            p.extend_from_slice(&len.to_le_bytes());
            p.extend(std::iter::repeat_n(b'x', if len <= 4096 { len as usize } else { 16 }));
        }
        p
    }

    /// Packs (value, width) fields LSB first, as a Vorbis setup header.
    fn packed(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut bit = 0usize;
        for &(value, width) in fields {
            for i in 0..width {
                if bit / 8 == out.len() {
                    out.push(0);
                }
                out[bit / 8] |= (((value >> i) & 1) as u8) << (bit % 8);
                bit += 1;
            }
        }
        out
    }

    /// A setup header with one dense codebook of `entries` 1-bit codes and a lookup table.
    fn setup_header(dims: u32, entries: u32, lookup_type: u32) -> Vec<u8> {
        let mut fields = vec![(0, 8), (0x56_4342, 24), (dims, 16), (entries, 24), (0, 1), (0, 1)];
        fields.extend(std::iter::repeat_n((0, 5), entries.min(4096) as usize));
        fields.extend([(lookup_type, 4), (0, 32), (0, 32), (0, 4), (0, 1)]);
        let mut p = b"\x05vorbis".to_vec();
        p.extend(packed(&fields));
        p
    }

    #[test]
    fn the_crc_matches_real_pages_and_every_fixture_passes() {
        for name in ["tone_16k.ogg", "speechlike_8k.ogg", "chirp_44k_stereo.ogg"] {
            let ogg = fixture(name);
            let first = Page::parse(&ogg).expect("the first page parses with its CRC");
            assert_eq!(first.serial, u32::from_le_bytes(ogg[14..18].try_into().unwrap()));
            check_ogg_headers(&ogg).unwrap();
        }
        let mut ogg = fixture("tone_16k.ogg");
        ogg[30] ^= 1;
        assert!(Page::parse(&ogg).is_none(), "a flipped bit fails the CRC");
    }

    #[test]
    fn comment_lengths_beyond_the_packet_are_refused() {
        let good = page(7, &[&comment_header(&[5, 64], 2)]);
        check_ogg_headers(&good).unwrap();
        let hostile = page(7, &[&comment_header(&[5, 0xA5A5_A5A5], 2)]);
        let e = check_ogg_headers(&hostile).unwrap_err().to_string();
        assert!(e.contains("comment of 2779096485 bytes"), "{e}");
        // The vendor string's length is checked too, and Opus tags like Vorbis comments.
        let mut opus = b"OpusTags".to_vec();
        opus.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(check_ogg_headers(&page(1, &[&opus])).is_err());
        // Comments past the declared count are not read, as the decoder does not read them.
        let mut extra = comment_header(&[5], 1);
        extra.extend_from_slice(&u32::MAX.to_le_bytes());
        check_ogg_headers(&page(7, &[&extra])).unwrap();
        // A bad CRC hides the packet from symphonia and from the check alike.
        let mut bad_crc = hostile.clone();
        bad_crc[22] ^= 1;
        check_ogg_headers(&bad_crc).unwrap();
    }

    #[test]
    fn a_packet_continued_on_the_next_page_is_checked_whole() {
        let packet = comment_header(&[300, 0xFFFF_0000], 2);
        let first = raw_page(3, false, &[255], &packet[..255]);
        let rest = &packet[255..];
        let second = raw_page(3, true, &[rest.len() as u8], rest);
        let e = check_ogg_headers(&[first.clone(), second.clone()].concat()).unwrap_err();
        assert!(e.to_string().contains("comment of 4294901760 bytes"), "{e}");
        let fine = comment_header(&[300, 20], 2);
        let tail = &fine[255..];
        let split = [first, raw_page(3, true, &[tail.len() as u8], tail)].concat();
        check_ogg_headers(&split).unwrap();
        // A continuation with no first half (here a whole hostile header) is dropped unread.
        let hostile = comment_header(&[0xFFFF_0000], 1);
        let orphan = raw_page(9, true, &[hostile.len() as u8], &hostile);
        check_ogg_headers(&[page(9, &[b"x"]), orphan.clone()].concat()).unwrap();
        let whole = raw_page(9, false, &[hostile.len() as u8], &hostile);
        assert!(check_ogg_headers(&[page(9, &[b"x"]), whole].concat()).is_err());
    }

    #[test]
    fn codebooks_beyond_any_encoder_are_refused() {
        check_ogg_headers(&page(1, &[&setup_header(2, 81, 1)])).unwrap();
        check_ogg_headers(&page(1, &[&setup_header(4, 81, 2)])).unwrap();
        for (dims, entries, lookup, why) in [
            (0, 16, 1, "no dimensions"),
            (40, 3, 1, "3 entries in 40 dimensions"),
            (65535, 4000, 2, "lookup tables declare more than"),
        ] {
            let e = check_ogg_headers(&page(1, &[&setup_header(dims, entries, lookup)])).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        let mut huge = vec![(0, 8), (0x56_4342, 24), (1, 16), (0xFF_FFFF, 24)];
        huge.extend([(1, 1), (0, 5), (0xFF_FFFF, 24), (0, 4)]);
        let mut p = b"\x05vorbis".to_vec();
        p.extend(packed(&huge));
        let e = check_ogg_headers(&page(1, &[&p])).unwrap_err();
        assert!(e.to_string().contains("more than 4194304 entries"), "{e}");
    }

    #[test]
    fn lookup1_values_is_the_largest_root() {
        assert_eq!(lookup1_values(81, 2), Some(9));
        assert_eq!(lookup1_values(80, 2), Some(8));
        assert_eq!(lookup1_values(81, 4), Some(3));
        assert_eq!(lookup1_values(3, 40), None);
    }
}
