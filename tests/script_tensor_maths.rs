//! Tensor maths from scripts (matmul, einsum, exp/log/sqrt, softmax, norms, comparisons,
//! where), each checked against values computed here: by hand, or with plain f64 loops over
//! every index.

use minarc::script::{Host, Output, SharedBuf, Tensor};
use rhai::Dynamic;

fn host() -> (Host, SharedBuf) {
    let (out, buf) = Output::buffer();
    let host = Host::with_output(out);
    host.state().set_show_progress(false);
    (host, buf)
}

/// A dense f64 array with its shape (row-major).
#[derive(Debug, Clone)]
struct Arr {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Arr {
    fn new(shape: &[usize], data: Vec<f64>) -> Arr {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Arr {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Deterministic values: multiples of 1/8 in [-2, 2] (exact in f32).
    fn pseudo(shape: &[usize], seed: u64) -> Arr {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 33) as f64 / 8.0 - 2.0
            })
            .collect();
        Arr::new(shape, data)
    }

    /// `from_array(...)` source text for this array.
    fn script(&self) -> String {
        fn nest(shape: &[usize], data: &[f64]) -> String {
            match shape.split_first() {
                None => format!("{:?}", data[0]),
                Some((&n, rest)) => {
                    let stride: usize = rest.iter().product();
                    let parts: Vec<String> = (0..n)
                        .map(|i| nest(rest, &data[i * stride..(i + 1) * stride]))
                        .collect();
                    format!("[{}]", parts.join(", "))
                }
            }
        }
        if self.shape.contains(&0) {
            return format!("zeros({:?})", self.shape);
        }
        format!("from_array({})", nest(&self.shape, &self.data))
    }

    fn at(&self, idx: &[usize]) -> f64 {
        self.data[flat(&self.shape, idx)]
    }
}

fn flat(shape: &[usize], idx: &[usize]) -> usize {
    assert_eq!(shape.len(), idx.len());
    idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Every multi-index of `shape`, row-major.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    for mut k in 0..n {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = k % shape[d];
            k /= shape[d];
        }
        out.push(idx);
    }
    out
}

/// The index into an operand of `shape` for an output index under right-aligned broadcasting.
fn bcast_index(shape: &[usize], out_idx: &[usize]) -> Vec<usize> {
    let off = out_idx.len() - shape.len();
    shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if n == 1 { 0 } else { out_idx[off + d] })
        .collect()
}

fn bcast_shape(shapes: &[&[usize]]) -> Vec<usize> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap();
    (0..rank)
        .map(|d| {
            shapes
                .iter()
                .filter_map(|s| (d + s.len()).checked_sub(rank).map(|k| s[k]))
                .fold(1, |acc, n| if n == 1 { acc } else { n })
        })
        .collect()
}

fn tensor_of(v: &Dynamic) -> Arr {
    let t = v
        .read_lock::<Tensor>()
        .unwrap_or_else(|| panic!("expected a Tensor, got {}", v.type_name()))
        .clone();
    assert_eq!(t.dtype(), "f32");
    let data =
        t.0.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
    Arr::new(&t.shape(), data)
}

fn eval_tensor(h: &mut Host, src: &str) -> Arr {
    let v = h
        .eval_source("maths.rhai", src, false)
        .unwrap_or_else(|e| panic!("{src}: {e}"));
    tensor_of(&v)
}

/// Same shape and every value within `tol` (relative to max(1, |want|)); NaN matches NaN and
/// infinities must be equal.
fn assert_close(what: &str, got: &Arr, want: &Arr, tol: f64) {
    assert_eq!(got.shape, want.shape, "{what}: shape");
    for (k, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * w.abs().max(1.0)
        };
        assert!(ok, "{what}: element {k}: got {g}, want {w}");
    }
}

// ------------------------------------------------------------------ reference maths in f64

/// torch.matmul by loops: 1-D operands promoted (row on the left, column on the right) and the
/// added dim dropped, batch dims broadcast.
fn matmul_ref(a: &Arr, b: &Arr) -> Arr {
    let a2 = if a.shape.len() == 1 {
        vec![1, a.shape[0]]
    } else {
        a.shape.clone()
    };
    let b2 = if b.shape.len() == 1 {
        vec![b.shape[0], 1]
    } else {
        b.shape.clone()
    };
    let (ra, rb) = (a2.len(), b2.len());
    let (m, k, n) = (a2[ra - 2], a2[ra - 1], b2[rb - 1]);
    assert_eq!(k, b2[rb - 2]);
    let batch = bcast_shape(&[&a2[..ra - 2], &b2[..rb - 2]]);
    let full: Vec<usize> = [batch.as_slice(), &[m, n]].concat();
    let mut data = Vec::new();
    for idx in indices(&full) {
        let bi = &idx[..batch.len()];
        let (i, j) = (idx[batch.len()], idx[batch.len() + 1]);
        let (ab, bb) = (
            bcast_index(&a2[..ra - 2], bi),
            bcast_index(&b2[..rb - 2], bi),
        );
        let mut s = 0.0;
        for kk in 0..k {
            let ai = [ab.as_slice(), &[i, kk]].concat();
            let bj = [bb.as_slice(), &[kk, j]].concat();
            s += a.data[flat(&a2, &ai)] * b.data[flat(&b2, &bj)];
        }
        data.push(s);
    }
    let mut shape = batch;
    if a.shape.len() > 1 {
        shape.push(m);
    }
    if b.shape.len() > 1 {
        shape.push(n);
    }
    Arr::new(&shape, data)
}

/// einsum by nested loops over every value of every index.
fn einsum_ref(spec: &str, ops: &[&Arr]) -> Arr {
    let spec: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, out) = spec.split_once("->").unwrap();
    let terms: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    let out: Vec<char> = out.chars().collect();
    let mut letters: Vec<char> = out.clone();
    let mut size = std::collections::HashMap::new();
    for (term, a) in terms.iter().zip(ops) {
        for (&c, &n) in term.iter().zip(&a.shape) {
            size.insert(c, n);
            if !letters.contains(&c) {
                letters.push(c);
            }
        }
    }
    let dims: Vec<usize> = letters.iter().map(|c| size[c]).collect();
    let out_shape: Vec<usize> = out.iter().map(|c| size[c]).collect();
    let mut data = vec![0.0; out_shape.iter().product()];
    for idx in indices(&dims) {
        let val = |c: &char| idx[letters.iter().position(|l| l == c).unwrap()];
        let p: f64 = terms
            .iter()
            .zip(ops)
            .map(|(term, a)| a.at(&term.iter().map(val).collect::<Vec<_>>()))
            .product();
        data[flat(&out_shape, &out.iter().map(val).collect::<Vec<_>>())] += p;
    }
    Arr::new(&out_shape, data)
}

/// softmax / log_softmax along `dim` in f64 (max subtracted).
fn softmax_ref(a: &Arr, dim: usize, log: bool) -> Arr {
    let mut data = vec![0.0; a.data.len()];
    let n = a.shape[dim];
    let mut outer = a.shape.clone();
    outer[dim] = 1;
    for base in indices(&outer) {
        let at = |i: usize| {
            let mut idx = base.clone();
            idx[dim] = i;
            flat(&a.shape, &idx)
        };
        let m = (0..n)
            .map(|i| a.data[at(i)])
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = (0..n).map(|i| (a.data[at(i)] - m).exp()).sum();
        for i in 0..n {
            let x = a.data[at(i)] - m;
            data[at(i)] = if log { x - z.ln() } else { x.exp() / z };
        }
    }
    Arr::new(&a.shape, data)
}

/// L2 norms along `dim` by summing squares.
fn norm_ref(a: &Arr, dim: usize) -> Arr {
    let mut shape = a.shape.clone();
    shape.remove(dim);
    let mut data = vec![0.0; shape.iter().product()];
    for idx in indices(&a.shape) {
        let mut o = idx.clone();
        o.remove(dim);
        data[flat(&shape, &o)] += a.at(&idx).powi(2);
    }
    Arr::new(&shape, data.into_iter().map(f64::sqrt).collect())
}

/// An elementwise function of broadcast operands.
fn bcast_ref(ops: &[&Arr], f: impl Fn(&[f64]) -> f64) -> Arr {
    let shapes: Vec<&[usize]> = ops.iter().map(|a| a.shape.as_slice()).collect();
    let out = bcast_shape(&shapes);
    let data = indices(&out)
        .iter()
        .map(|idx| {
            let vals: Vec<f64> = ops
                .iter()
                .map(|a| a.at(&bcast_index(&a.shape, idx)))
                .collect();
            f(&vals)
        })
        .collect();
    Arr::new(&out, data)
}

// ------------------------------------------------------------------------------ the tests

#[test]
fn matmul_matches_hand_values_for_matrices_and_vectors() {
    let (mut h, _) = host();
    let cases: &[(&str, &[usize], &[f64])] = &[
        (
            "matmul(from_array([[1, 2], [3, 4]]), from_array([[5, 6], [7, 8]]))",
            &[2, 2],
            &[19.0, 22.0, 43.0, 50.0],
        ),
        // vector · matrix, matrix · vector, vector · vector (a 0-d tensor)
        (
            "from_array([1, 2]).matmul(from_array([[5, 6], [7, 8]]))",
            &[2],
            &[19.0, 22.0],
        ),
        (
            "matmul(from_array([[1, 2], [3, 4]]), from_array([5, 6]))",
            &[2],
            &[17.0, 39.0],
        ),
        (
            "matmul(from_array([1, 2, 3]), from_array([4, 5, 6]))",
            &[],
            &[32.0],
        ),
        // an empty inner dim gives zeros
        ("matmul(zeros([2, 0]), zeros([0, 3]))", &[2, 3], &[0.0; 6]),
    ];
    for (src, shape, want) in cases {
        let got = eval_tensor(&mut h, src);
        assert_close(src, &got, &Arr::new(shape, want.to_vec()), 0.0);
    }
    let v = h
        .eval_source(
            "dot.rhai",
            "matmul(from_array([1, 2, 3]), from_array([4, 5, 6])).item()",
            false,
        )
        .unwrap();
    assert_eq!(v.as_float().unwrap(), 32.0);
}

#[test]
fn matmul_matches_loops_with_batches_broadcasting_and_vectors() {
    let (mut h, _) = host();
    let shapes: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[5, 4, 2]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),
        (&[4], &[2, 4, 3]),
        (&[2, 3, 4], &[4]),
        (&[7], &[7]),
        (&[1, 1], &[1, 1]),
    ];
    for (k, (sa, sb)) in shapes.iter().enumerate() {
        let a = Arr::pseudo(sa, 2 * k as u64);
        let b = Arr::pseudo(sb, 2 * k as u64 + 1);
        let src = format!(
            "let a = {}; let b = {}; a.matmul(b)",
            a.script(),
            b.script()
        );
        let got = eval_tensor(&mut h, &src);
        assert_close(&format!("{sa:?} @ {sb:?}"), &got, &matmul_ref(&a, &b), 1e-5);
    }
}

#[test]
fn einsum_matches_nested_loops() {
    let (mut h, _) = host();
    let cases: &[(&str, &[&[usize]])] = &[
        ("ij,jk->ik", &[&[3, 4], &[4, 5]]),
        ("bij,bjk->bik", &[&[2, 3, 4], &[2, 4, 2]]),
        ("i,i->", &[&[6], &[6]]),
        ("nsd,ed->nse", &[&[2, 3, 4], &[5, 4]]),
        ("ij->ji", &[&[3, 4]]),
        ("ij->", &[&[3, 4]]),
        ("ijk->ki", &[&[2, 3, 4]]),
        ("i,j->ij", &[&[3], &[4]]),
        ("ij,ij->i", &[&[3, 4], &[3, 4]]),
        ("ij,kl->ikjl", &[&[2, 3], &[2, 2]]),
        ("ij,jk,kl->il", &[&[2, 3], &[3, 4], &[4, 2]]),
        // the middle pair shares no index: contracted (0, 2) first
        ("ij,kl,jl->ik", &[&[2, 3], &[2, 4], &[3, 4]]),
        ("bi,bj,b->ij", &[&[4, 2], &[4, 3], &[4]]),
        ("i,j,k->", &[&[2], &[3], &[4]]),
        ("iJ,J->i", &[&[3, 5], &[5]]),
        (" bhqd , bhkd -> bhqk ", &[&[2, 2, 3, 4], &[2, 2, 5, 4]]),
        ("ab,bc->ca", &[&[3, 0], &[0, 2]]),
    ];
    for (k, (spec, shapes)) in cases.iter().enumerate() {
        let ops: Vec<Arr> = shapes
            .iter()
            .enumerate()
            .map(|(j, s)| Arr::pseudo(s, 100 + 10 * k as u64 + j as u64))
            .collect();
        let list: Vec<String> = ops.iter().map(Arr::script).collect();
        let src = format!("einsum(\"{spec}\", [{}])", list.join(", "));
        let got = eval_tensor(&mut h, &src);
        let refs: Vec<&Arr> = ops.iter().collect();
        assert_close(spec, &got, &einsum_ref(spec, &refs), 1e-5);
    }
    // by hand: trace-free contraction and an outer product
    let got = eval_tensor(
        &mut h,
        "einsum(\"ij,jk->ik\", [from_array([[1, 2], [3, 4]]), from_array([[5, 6], [7, 8]])])",
    );
    assert_close(
        "hand",
        &got,
        &Arr::new(&[2, 2], vec![19., 22., 43., 50.]),
        0.0,
    );
    let got = eval_tensor(
        &mut h,
        "einsum(\"i,j->ij\", [from_array([1, 2]), from_array([3, 4, 5])])",
    );
    assert_close(
        "outer",
        &got,
        &Arr::new(&[2, 3], vec![3., 4., 5., 6., 8., 10.]),
        0.0,
    );
    // einsum and matmul agree on a batched product
    let a = Arr::pseudo(&[3, 2, 4], 7);
    let b = Arr::pseudo(&[3, 4, 5], 8);
    let src = format!(
        "let a = {}; let b = {}; (einsum(\"bij,bjk->bik\", [a, b]) - a.matmul(b)).abs().max()",
        a.script(),
        b.script()
    );
    let v = h.eval_source("agree.rhai", &src, false).unwrap();
    assert!(v.as_float().unwrap() < 1e-5);
}

#[test]
fn exp_log_sqrt_follow_ieee_like_torch() {
    let (mut h, _) = host();
    let xs = [-4.0, -1.0, 0.0, 0.25, 1.0, 2.0, 9.0];
    let a = Arr::new(&[7], xs.to_vec());
    type F = fn(f64) -> f64;
    let funcs: [(&str, F); 3] = [("exp", f64::exp), ("log", f64::ln), ("sqrt", f64::sqrt)];
    for (name, f) in funcs {
        let got = eval_tensor(&mut h, &format!("{name}({})", a.script()));
        let want = Arr::new(&[7], xs.iter().map(|&x| f(x)).collect());
        assert_close(name, &got, &want, 1e-6);
    }
    // by hand: log of a negative is NaN, log 0 is -inf, sqrt of a negative is NaN
    let got = eval_tensor(&mut h, "from_array([-1.0, 0.0, 1.0]).log()");
    assert!(got.data[0].is_nan() && got.data[1] == f64::NEG_INFINITY && got.data[2] == 0.0);
    let got = eval_tensor(&mut h, "from_array([[-4.0, 16.0]]).sqrt()");
    assert!(got.data[0].is_nan() && got.data[1] == 4.0 && got.shape == vec![1, 2]);
    let got = eval_tensor(&mut h, "exp(zeros([2, 2]))");
    assert_close("exp 0", &got, &Arr::new(&[2, 2], vec![1.0; 4]), 0.0);
    // plain numbers keep Rhai's own functions (log is base 10 there)
    let v = h.eval_source("n.rhai", "log(100.0)", false).unwrap();
    assert_eq!(v.as_float().unwrap(), 2.0);
}

#[test]
fn softmax_and_log_softmax_match_f64_along_every_dim() {
    let (mut h, _) = host();
    let a = Arr::pseudo(&[2, 3, 4], 42);
    for dim in [0i64, 1, 2, -1, -2, -3] {
        let d = dim.rem_euclid(3) as usize;
        for (name, log) in [("softmax", false), ("log_softmax", true)] {
            let got = eval_tensor(&mut h, &format!("{}.{name}({dim})", a.script()));
            assert_close(
                &format!("{name} dim {dim}"),
                &got,
                &softmax_ref(&a, d, log),
                1e-5,
            );
        }
    }
    // by hand, and stable for large inputs: softmax([1000, 1001, 1002]) = softmax([0, 1, 2])
    let z = 1.0 + 1f64.exp() + 2f64.exp();
    let want = Arr::new(&[3], vec![1.0 / z, 1f64.exp() / z, 2f64.exp() / z]);
    let got = eval_tensor(&mut h, "softmax(from_array([1000.0, 1001.0, 1002.0]), 0)");
    assert_close("large softmax", &got, &want, 1e-6);
    let got = eval_tensor(&mut h, "log_softmax(from_array([[1000.0, 0.0]]), 1)");
    assert_close(
        "large log_softmax",
        &got,
        &Arr::new(&[1, 2], vec![-(-1000f64).exp().ln_1p(), -1000.0]),
        1e-6,
    );
    // rows sum to one
    let v = h
        .eval_source(
            "rows.rhai",
            &format!("({}.softmax(-1).sum(-1) - 1.0).abs().max()", a.script()),
            false,
        )
        .unwrap();
    assert!(v.as_float().unwrap() < 1e-6);
}

#[test]
fn norms_match_sums_of_squares() {
    let (mut h, _) = host();
    let v = h
        .eval_source("n.rhai", "norm(from_array([[3, 0], [0, -4]]))", false)
        .unwrap();
    assert_eq!(v.as_float().unwrap(), 5.0);
    let a = Arr::pseudo(&[3, 4, 2], 5);
    let want: f64 = a.data.iter().map(|x| x * x).sum::<f64>().sqrt();
    let v = h
        .eval_source("n.rhai", &format!("{}.norm()", a.script()), false)
        .unwrap();
    assert!((v.as_float().unwrap() - want).abs() < 1e-5 * want);
    for dim in [0i64, 1, 2, -1, -3] {
        let d = dim.rem_euclid(3) as usize;
        let got = eval_tensor(&mut h, &format!("norm({}, {dim})", a.script()));
        assert_close(&format!("norm dim {dim}"), &got, &norm_ref(&a, d), 1e-5);
    }
    let got = eval_tensor(&mut h, "from_array([[3, 4], [6, 8]]).norm(1)");
    assert_close("hand", &got, &Arr::new(&[2], vec![5.0, 10.0]), 0.0);
    let v = h.eval_source("n.rhai", "norm(zeros([0]))", false).unwrap();
    assert_eq!(v.as_float().unwrap(), 0.0);
}

#[test]
fn comparisons_give_zero_one_tensors_with_broadcasting() {
    let (mut h, _) = host();
    let a = Arr::new(&[2, 3], vec![1.0, -2.0, 3.0, 0.5, 3.0, -6.0]);
    let row = Arr::new(&[3], vec![1.0, 0.0, 3.0]);
    let col = Arr::new(&[2, 1], vec![0.5, 3.0]);
    type P = fn(f64, f64) -> bool;
    let ops: [(&str, P); 6] = [
        ("gt", |x, y| x > y),
        ("ge", |x, y| x >= y),
        ("lt", |x, y| x < y),
        ("le", |x, y| x <= y),
        ("eq", |x, y| x == y),
        ("ne", |x, y| x != y),
    ];
    let b2i = |b: bool| if b { 1.0 } else { 0.0 };
    for (name, f) in ops {
        for other in [&row, &col] {
            let got = eval_tensor(
                &mut h,
                &format!("{}.{name}({})", a.script(), other.script()),
            );
            let want = bcast_ref(&[&a, other], |v| b2i(f(v[0], v[1])));
            assert_close(&format!("{name} {:?}", other.shape), &got, &want, 0.0);
        }
        // a [2, 1] column against a [3] row broadcasts to [2, 3]
        let got = eval_tensor(
            &mut h,
            &format!("{name}({}, {})", col.script(), row.script()),
        );
        let want = bcast_ref(&[&col, &row], |v| b2i(f(v[0], v[1])));
        assert_close(&format!("{name} col-row"), &got, &want, 0.0);
        for (num, x) in [("3", 3.0), ("0.5", 0.5), ("-2", -2.0)] {
            let got = eval_tensor(&mut h, &format!("{name}({}, {num})", a.script()));
            let want = Arr::new(&[2, 3], a.data.iter().map(|&v| b2i(f(v, x))).collect());
            assert_close(&format!("{name} {num}"), &got, &want, 0.0);
        }
    }
    // by hand
    let got = eval_tensor(&mut h, "from_array([1, 2, 3]).gt(2)");
    assert_close("gt 2", &got, &Arr::new(&[3], vec![0.0, 0.0, 1.0]), 0.0);
    // usable as a mask: count the positives
    let v = h
        .eval_source("m.rhai", "from_array([1, -2, 3, 0]).gt(0).sum()", false)
        .unwrap();
    assert_eq!(v.as_float().unwrap(), 2.0);
}

#[test]
fn where_picks_elementwise_and_broadcasts() {
    let (mut h, _) = host();
    let cond = Arr::new(&[2, 3], vec![1.0, 0.0, 2.0, 0.0, -1.0, 0.0]);
    let a = Arr::pseudo(&[2, 3], 3);
    let b = Arr::pseudo(&[3], 4);
    let pick = |v: &[f64]| if v[0] != 0.0 { v[1] } else { v[2] };
    let got = eval_tensor(
        &mut h,
        &format!("where({}, {}, {})", cond.script(), a.script(), b.script()),
    );
    assert_close("t t t", &got, &bcast_ref(&[&cond, &a, &b], pick), 0.0);
    // method form, a number for b, and a [2, 1] condition broadcast against a [3] row
    let col = Arr::new(&[2, 1], vec![0.0, 1.0]);
    let got = eval_tensor(
        &mut h,
        &format!("{}.where({}, -1)", col.script(), b.script()),
    );
    let minus_one = Arr::new(&[], vec![-1.0]);
    assert_close(
        "col row num",
        &got,
        &bcast_ref(&[&col, &b, &minus_one], pick),
        0.0,
    );
    let got = eval_tensor(&mut h, "where(from_array([1, 0]), 2.5, 7)");
    assert_close("numbers", &got, &Arr::new(&[2], vec![2.5, 7.0]), 0.0);
    // NaN counts as true, like any nonzero value
    let got = eval_tensor(&mut h, "where(from_array([0.0 / 0.0, 0.0]), 1, 2)");
    assert_close("nan", &got, &Arr::new(&[2], vec![1.0, 2.0]), 0.0);
    // a mask from a comparison: clamp negatives to zero
    let got = eval_tensor(
        &mut h,
        "let t = from_array([1, -2, 3, -4]); where(t.lt(0), 0, t)",
    );
    assert_close("relu", &got, &Arr::new(&[4], vec![1.0, 0.0, 3.0, 0.0]), 0.0);
}

#[test]
fn bad_calls_get_clear_errors_and_keep_the_session() {
    let (mut h, _) = host();
    let _ = h
        .eval_source(
            "prelude.rhai",
            "let t = from_array([[1, 2, 3], [4, 5, 6]]); let v = from_array([1, 2, 3]);",
            true,
        )
        .unwrap();
    let cases: &[(&str, &[&str])] = &[
        (
            "matmul(from_array(1.0), t)",
            &["matmul()", "at least 1 dim"],
        ),
        ("matmul(t, t)", &["matmul()", "inner dims differ", "3 vs 2"]),
        (
            "matmul(ones([2, 2, 3]), ones([3, 3, 4]))",
            &["batch dims [2] and [3]", "do not broadcast"],
        ),
        ("matmul(v, from_array([1, 2]))", &["inner dims differ"]),
        (
            "matmul(ones([100000, 1]), ones([1, 100000]))",
            &["matmul result", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        (
            "matmul(ones([1000, 1, 1, 1000]), ones([1000, 1000, 1]))",
            &["broadcast left operand", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        (
            "einsum(\"ij,jk\", [t, t])",
            &["einsum()", "explicit output"],
        ),
        ("einsum(\"ii->i\", [ones([2, 2])])", &["'i'", "repeated"]),
        ("einsum(\"ij->ii\", [t])", &["'i'", "twice in the output"]),
        ("einsum(\"ij->k\", [t])", &["'k'", "unknown"]),
        ("einsum(\"i1->i\", [v])", &["unexpected character", "'1'"]),
        ("einsum(\"...ij->ij\", [t])", &["ellipsis", "not supported"]),
        ("einsum(\"ij->j->i\", [t])", &["more than one ->"]),
        (
            "einsum(\"ij,jk->ik\", [ones([2, 3]), ones([4, 5])])",
            &["'j'", "size 3 in operand 0 but 4 in operand 1"],
        ),
        (
            "einsum(\"ij,jk->ik\", [t])",
            &["names 2 operands", "1 tensors"],
        ),
        (
            "einsum(\"ijk->i\", [t])",
            &["[2, 3]", "(2 dims)", "names 3"],
        ),
        ("einsum(\"->\", [])", &["1 to 3 tensors", "got 0"]),
        (
            "einsum(\"i,i,i,i->\", [v, v, v, v])",
            &["1 to 3 tensors", "got 4"],
        ),
        (
            "einsum(\"i,i->\", [v, 5])",
            &["tensors[1]", "expected a Tensor"],
        ),
        (
            "einsum(\"i,j->ij\", [ones([100000]), ones([100000])])",
            &[
                "einsum result",
                "10000000000 elements",
                "MINARC_MAX_TENSOR_ELEMS",
            ],
        ),
        ("softmax(t, 2)", &["softmax()", "dim 2 out of range"]),
        (
            "log_softmax(t, -3)",
            &["log_softmax()", "dim -3 out of range"],
        ),
        ("softmax(from_array(1.0), 0)", &["out of range"]),
        ("norm(t, 5)", &["norm()", "out of range"]),
        ("gt(t, \"x\")", &["gt()", "must be a Tensor or a number"]),
        (
            "eq(t, ones([4]))",
            &["eq()", "[2, 3], [4]", "do not broadcast"],
        ),
        (
            "ne(ones([100000, 1]), ones([100000]))",
            &["comparison", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        ("where(t, ones([2]), 0)", &["where()", "do not broadcast"]),
        ("where(t, \"a\", 0)", &["a must be a Tensor or a number"]),
        ("t.where(1, [1])", &["b must be a Tensor or a number"]),
        (
            "where(ones([100000, 1]), ones([100000]), 0)",
            &["result of where", "MINARC_MAX_TENSOR_ELEMS"],
        ),
        ("exp(1, 2)", &["Function not found"]),
    ];
    for (call, words) in cases {
        let e = h
            .eval_source("case.rhai", &format!("let r = {call};"), true)
            .err()
            .unwrap_or_else(|| panic!("{call}: no error"));
        let msg = e.to_string();
        for w in *words {
            assert!(msg.contains(w), "{call}: error {msg:?} lacks {w:?}");
        }
    }
    // The session still has its variables and computes.
    let got = eval_tensor(&mut h, "matmul(t, v)");
    assert_close("after errors", &got, &Arr::new(&[2], vec![14.0, 32.0]), 0.0);
}

#[test]
fn scripting_guide_tensor_maths_example_runs_and_prints_what_it_says() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/scripting.md"
    ))
    .unwrap();
    let block = guide
        .split("```rhai\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("einsum("))
        .expect("docs/src/scripting.md has a rhai example with einsum");
    let (mut h, buf) = host();
    if let Err(e) = h.eval_source("guide.rhai", block, false) {
        panic!("{e}");
    }
    // Each print(...) line of the example says what it prints in its trailing comment.
    let want: Vec<String> = block
        .lines()
        .filter(|l| l.trim_start().starts_with("print("))
        .map(|l| {
            l.split("// ")
                .nth(1)
                .expect("print line with a comment")
                .trim()
                .to_string()
        })
        .collect();
    let got: Vec<String> = buf.contents().lines().map(str::to_string).collect();
    assert_eq!(got, want);
}
