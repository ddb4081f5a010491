// A scalar attention map over the image: the map texture (one f32 per patch) is sampled nearest
// or bilinear by hand, scaled from [lo, hi], looked up in a colour-map row and drawn with
// premultiplied alpha over what egui drew beneath (the image).

struct Params {
    // lo, hi of the value range; opacity; 1 = bilinear, 0 = nearest
    range_opacity_filter: vec4<f32>,
    // colour-map row, 1 when the target is sRGB (write linear values), map width, map height
    cmap_srgb_size: vec4<u32>,
};

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var map_tex: texture_2d<f32>;
@group(0) @binding(2) var lut_tex: texture_2d<f32>;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

// Two triangles covering the callback's viewport.
@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let uv = corners[i];
    var out: VsOut;
    out.pos = vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
    out.uv = uv;
    return out;
}

fn texel(x: i32, y: i32, size: vec2<i32>) -> f32 {
    let p = clamp(vec2<i32>(x, y), vec2<i32>(0, 0), size - vec2<i32>(1, 1));
    return textureLoad(map_tex, p, 0).r;
}

fn sample_map(uv: vec2<f32>, size: vec2<i32>) -> f32 {
    let f = uv * vec2<f32>(size);
    if (params.range_opacity_filter.w < 0.5) {
        return texel(i32(floor(f.x)), i32(floor(f.y)), size);
    }
    // Texel centres at +0.5, as a GPU sampler with clamp-to-edge.
    let g = f - vec2<f32>(0.5, 0.5);
    let i = vec2<i32>(floor(g));
    let t = g - floor(g);
    let a = mix(texel(i.x, i.y, size), texel(i.x + 1, i.y, size), t.x);
    let b = mix(texel(i.x, i.y + 1, size), texel(i.x + 1, i.y + 1, size), t.x);
    return mix(a, b, t.y);
}

fn to_linear(c: vec3<f32>) -> vec3<f32> {
    let lo = c / 12.92;
    let hi = pow((c + vec3<f32>(0.055)) / 1.055, vec3<f32>(2.4));
    return select(hi, lo, c <= vec3<f32>(0.04045));
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let size = vec2<i32>(params.cmap_srgb_size.zw);
    let v = sample_map(in.uv, size);
    let lo = params.range_opacity_filter.x;
    let hi = params.range_opacity_filter.y;
    var t = 0.0;
    if (hi > lo) {
        t = clamp((v - lo) / (hi - lo), 0.0, 1.0);
    }
    let n = textureDimensions(lut_tex).x;
    let idx = i32(round(t * f32(n - 1u)));
    var rgb = textureLoad(lut_tex, vec2<i32>(idx, i32(params.cmap_srgb_size.x)), 0).rgb;
    if (params.cmap_srgb_size.y == 1u) {
        rgb = to_linear(rgb);
    }
    let a = params.range_opacity_filter.z;
    return vec4<f32>(rgb * a, a);
}
